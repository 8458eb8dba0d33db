"""Forwarding: the request to the upstream over pooled keep-alive connections, its body
streamed under the limits, the response streamed back, upstream errors. Which headers go
each way is `tokenward.gateway.headers`; the forward step receives the `Exchange` the
earlier steps built (canonical target, principal, request id, trusted-proxy verdict).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping

from tokenward.gateway.exchange import REMAINING_HEADER, Exchange
from tokenward.gateway.forms import BodyScanner, OverrideFound, body_scanner
from tokenward.gateway.headers import (
    DROP,
    TRUSTED_ONLY,
    IdentityHeaders,
    ResponseHeaders,
    connection_tokens,
    identity_headers,
    normalize_name,
)
from tokenward.gateway.inbound import Body, Request
from tokenward.gateway.mcp_stream import JsonFilter, SseFilter, response_filter
from tokenward.gateway.mcp_stream import upstream_headers as mcp_headers
from tokenward.gateway.metrics import Histogram
from tokenward.gateway.outbox import Outbox
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.reply import Block, Reply, StreamReply
from tokenward.gateway.settings import Limits, Upstream
from tokenward.gateway.upstream import (
    IDEMPOTENT,
    Connection,
    Pool,
    UpstreamFailed,
    decode_header,
    request_head,
)


class BodyGuard:
    """Streams the client's body upstream, enforcing the size limit and a per-read timeout;
    a form body's scanner sees each chunk before it is forwarded (see gateway/forms.py)."""

    def __init__(
        self, stream: Body, max_bytes: int, timeout: float, scanner: BodyScanner | None = None
    ) -> None:
        self.stream = stream
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.scanner = scanner
        self.received = 0
        self.failure: Refusal | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await asyncio.wait_for(self.stream.readany(), self.timeout)
            except TimeoutError:
                self.failure = client_body_error(
                    408, "request_timeout", "client sent the request body too slowly"
                )
                raise
            if not chunk:
                return
            self.received += len(chunk)
            if self.received > self.max_bytes:
                self.failure = client_body_error(413, "payload_too_large", "request body too large")
                raise ValueError("request body too large")
            if self.scanner is not None:
                try:
                    self.scanner.feed(chunk)
                except OverrideFound as exc:
                    self.failure = client_body_error(
                        400,
                        "invalid_request",
                        f"method override parameters are not accepted: {exc}",
                        Step.REQUEST,
                    )
                    raise
            yield chunk


UPSTREAM_ERRORS = {502: "bad_gateway", 503: "upstream_busy", 504: "gateway_timeout"}


def upstream_error(status: int, message: str) -> Refusal:
    """The upstream failed (502), had no connection free (503, max_connections) or timed
    out (504) after the decision allowed the request."""
    return Refusal(status, UPSTREAM_ERRORS[status], Step.UPSTREAM, message)


def client_body_error(status: int, error: str, message: str, step: Step = Step.LIMITS) -> Refusal:
    """The client's body broke a limit (413), stalled (408) or carried a method override
    (400) while being forwarded: the connection closes after the answer."""
    return Refusal(status, error, step, message, close=True)


def upstream_headers(
    ex: Exchange, host: str, identity: IdentityHeaders | None = None
) -> list[tuple[str, str]]:
    """The request headers for the upstream: `Host: host`, the inbound ones the header
    policy keeps (the trusted-proxy ones only when the edge found the peer trusted), the
    rebuilt forwarding headers, the request id and the caller's identity."""
    request = ex.request
    policy = ex.view.headers
    inbound = request.headers
    dropped = connection_tokens(inbound) if "Connection" in inbound else ()
    trusted = ex.trusted
    kind_of = policy.kind
    out: list[tuple[str, str]] = [("Host", host)]
    for name, value in inbound.items():
        kind = kind_of(name)
        if kind == DROP or (kind == TRUSTED_ONLY and not trusted):
            continue
        if dropped and normalize_name(name) in dropped:
            continue
        out.append((name, value))
    client = ex.peer or ""
    previous = (
        ", ".join(inbound.getall("X-Forwarded-For")) if trusted and "X-Forwarded-For" in inbound else None
    )
    out.append(("X-Forwarded-For", f"{previous}, {client}" if previous else client))
    proto = inbound.get("X-Forwarded-Proto") if trusted else None
    out.append(("X-Forwarded-Proto", proto or request.scheme))
    host_seen = inbound.get("X-Forwarded-Host") if trusted else None
    out.append(("X-Forwarded-Host", host_seen or request.host))
    out.append(("X-Request-Id", ex.request_id))
    if ex.principal is not None:
        out.extend((identity or identity_headers)(ex.principal).items())
        if ex.remaining is not None:
            out.append((REMAINING_HEADER, str(ex.remaining)))
    if ex.trace is not None:  # tracing on: this request's trace context replaces the client's
        ex.trace.inject(out)
    return out


def upstream_head(ex: Exchange, method: str, target: str, host: str, identity: IdentityHeaders) -> bytes:
    """`request_head(method, target, upstream_headers(...))` plus the framing header, in one
    pass over the inbound header lines as they came (bytes): for a request with no MCP
    rewrite and no trace context to inject."""
    request = ex.request
    policy = ex.view.headers
    kinds = policy.raw_kinds
    trusted = ex.trusted
    inbound = request.headers
    dropped = connection_tokens(inbound) if "Connection" in inbound else ()
    lines = [b"%b %b HTTP/1.1\r\nHost: %b\r\n" % (method.encode("ascii"), _utf8(target), _utf8(host))]
    for name, value in request.raw_headers:
        kind = kinds.get(name)
        if kind is None:
            kind = policy.kind_raw(name)
        if kind == DROP or (kind == TRUSTED_ONLY and not trusted):
            continue
        if dropped and normalize_name(name.decode("latin-1")) in dropped:
            continue
        lines.append(b"%b: %b\r\n" % (name, value))
    client = ex.peer or ""
    previous = (
        ", ".join(inbound.getall("X-Forwarded-For")) if trusted and "X-Forwarded-For" in inbound else None
    )
    proto = (inbound.get("X-Forwarded-Proto") if trusted else None) or request.scheme
    forwarded_host = (inbound.get("X-Forwarded-Host") if trusted else None) or request.host
    forwarded = f"{previous}, {client}" if previous else client
    lines.append(
        _utf8(
            f"X-Forwarded-For: {forwarded}\r\nX-Forwarded-Proto: {proto}\r\n"
            f"X-Forwarded-Host: {forwarded_host}\r\nX-Request-Id: {ex.request_id}\r\n"
        )
    )
    if ex.principal is not None:
        lines.append(identity.lines(ex.principal))
        if ex.remaining is not None:
            lines.append(b"%b: %d\r\n" % (REMAINING_HEADER.encode("ascii"), ex.remaining))
    if request.content_length is not None:
        lines.append(b"Content-Length: %d\r\n" % request.content_length)
    elif request.body_exists:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


async def filtered(conn: Connection, rewrite: JsonFilter | SseFilter) -> bytes:
    """An MCP response read whole (at most the policy's max_response) and filtered; before
    anything went to the client, so a failure is still a 502 or 504."""
    out: list[bytes] = []
    try:
        while chunk := await conn.next_chunk():
            out.append(rewrite.feed(chunk))
        out.append(rewrite.end())
        return b"".join(out)
    except UpstreamFailed as exc:
        raise upstream_error(504 if exc.timeout else 502, str(exc)) from None


class Forwarder:
    """Pools of keep-alive connections per upstream; small responses are answered in one
    write, larger or slower ones streamed."""

    def __init__(self, latency: Histogram | None = None) -> None:
        self.latency = latency
        # per (name, url, TLS context): a request uses the upstream of the settings it started with
        self.pools: dict[tuple[str, str, ssl.SSLContext | None], Pool] = {}
        self.identity = IdentityHeaders()  # the identity headers, remembered per token record
        self.response_headers = ResponseHeaders()  # which upstream response headers go back
        self.outbox: Outbox | None = None

    def pool(self, upstream: Upstream) -> Pool:
        key = (upstream.name, upstream.url, upstream.ssl_context)
        pool = self.pools.get(key)
        if pool is None:
            if self.outbox is None:  # one per loop: its pools' writes go out together
                self.outbox = Outbox(asyncio.get_running_loop())
            pool = self.pools[key] = Pool(upstream, asyncio.get_running_loop(), self.outbox)
        return pool

    def reconfigure(self, upstreams: Mapping[str, Upstream]) -> None:
        """A reload's upstreams: a pool the new settings still use (same name, URL and TLS
        context: each load builds new contexts, so https pools are always new and rotated
        certificate files are used at once) takes the new max_connections and pool_timeout;
        the others are retired (idle connections close now, busy ones when done)."""
        current = {(u.name, u.url, u.ssl_context): u for u in upstreams.values()}
        for key, pool in list(self.pools.items()):
            upstream = current.get(key)
            if upstream is None:
                del self.pools[key]
                pool.close()
            else:
                pool.limit.resize(upstream.max_connections, upstream.pool_timeout)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    async def forward(self, ex: Exchange, upstream: Upstream) -> Reply | StreamReply:
        """The forward step: `ex`'s request, to its canonical target on `upstream`."""
        request, target = ex.request, ex.target
        assert target is not None
        pool = self.pool(upstream)
        method = request.method
        has_body = request.body_exists
        body = ex.body  # an MCP route's: read whole by the decision, sent as it was authorized
        if body is None and ex.mcp is None and ex.trace is None:  # the usual case: the head in one pass
            head = upstream_head(
                ex, method, pool.target(target.path, target.query), pool.host_header, self.identity
            )
        else:
            headers = upstream_headers(ex, pool.host_header, self.identity)
            if ex.mcp is not None:
                headers = mcp_headers(headers)
            # Framing from what the listener parsed, never from inbound header spellings.
            if body is not None:
                headers.append(("Content-Length", str(len(body))))
            elif request.content_length is not None:
                headers.append(("Content-Length", str(request.content_length)))
            elif has_body:
                headers.append(("Transfer-Encoding", "chunked"))
            head = request_head(method, pool.target(target.path, target.query), headers)
        if (
            body is None
            and has_body
            and request.headers.get("Expect", "").lower() == "100-continue"
            and request.transport
            and request.version >= (1, 1)  # an HTTP/1.0 client knows no 100 Continue
        ):
            # The decision is made: let the client send its body (the upstream gets it at once).
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        sent = time.perf_counter()
        replayable = method in IDEMPOTENT and not has_body
        conn = await self._exchange(
            request, pool, upstream, head, has_body, replayable, ex.view.settings.limits, body
        )
        ex.upstream_seconds = waited = time.perf_counter() - sent
        if self.latency is not None:
            self.latency.labels(upstream.name).observe(waited)
        try:
            if conn.upgraded or conn.status == 101:
                conn.reusable = False
                raise upstream_error(502, f"upstream {upstream.name} switched protocols unasked")
            return await self._respond(request, conn, ex.request_id, ex)
        finally:
            conn.finish()

    async def upgrade(
        self, ex: Exchange, upstream: Upstream
    ) -> tuple[Connection | None, Reply | StreamReply]:
        """Ask the upstream to switch protocols. With its 101: the connection (to tunnel)
        and the 101 for the client, not yet sent. Otherwise its answer, as usual."""
        request, target, request_id = ex.request, ex.target, ex.request_id
        assert target is not None
        pool = self.pool(upstream)
        headers = upstream_headers(ex, pool.host_header, self.identity)
        headers += [("Connection", "Upgrade"), ("Upgrade", request.headers["Upgrade"])]
        head = request_head("GET", pool.target(target.path, target.query), headers)
        conn = await self._exchange(request, pool, upstream, head, False, True, ex.view.settings.limits)
        if conn.status != 101 or not conn.upgraded:
            conn.reusable = False  # an upgrade attempt's connection never goes back to the pool
            try:
                if conn.status == 101:
                    raise upstream_error(502, f"upstream {upstream.name} switched protocols without Upgrade")
                return None, await self._respond(request, conn, request_id)
            finally:
                conn.finish()
        # the upstream's header lines by the same rules as any response's, then the upgrade's own
        data, date, typed = self.response_headers.block(conn.headers, request_id)
        upgrade = next((v for n, v in conn.headers if n.lower() == b"upgrade"), b"websocket")
        data += b"Connection: Upgrade\r\nUpgrade: %b\r\n" % upgrade
        return conn, StreamReply(101, Block(data, date, typed, connection=True), decode_header(conn.reason) or None)

    async def _exchange(
        self,
        request: Request,
        pool: Pool,
        upstream: Upstream,
        head: bytes,
        has_body: bool,
        replayable: bool,
        limits: Limits,
        body: bytes | None = None,
    ) -> Connection:
        """Send the request; return the connection once the response head is in."""
        for attempt in (0, 1):
            try:
                if attempt == 0:
                    conn, reused = await pool.acquire(upstream.connect_timeout, replayable)
                else:  # never another pooled connection: it idled as long, likely closed too
                    conn, reused = await pool.acquire(upstream.connect_timeout, replayable, pooled=False)
            except UpstreamFailed as exc:
                raise upstream_error(503 if exc.busy else 504 if exc.timeout else 502, str(exc)) from None
            idle_for = pool.loop.time() - conn.idle_since if reused else 0.0
            conn.begin(request.method == "HEAD", upstream.timeout)
            try:
                conn.write(head)
                if body is not None:
                    await self._send_bytes(conn, body)
                elif has_body:
                    await self._send_body(request, conn, limits)
                await conn.response_head()
                if reused:
                    pool.alive_after(idle_for, conn.exchanges)
                return conn
            except UpstreamFailed as exc:
                conn.close()
                if exc.stale and reused:
                    pool.closed_while_idle(idle_for, conn.exchanges - 1)  # the ones before this
                if exc.stale and reused and replayable and attempt == 0:
                    continue  # the upstream closed the idle connection: once more, on a new one
                if exc.timeout:
                    raise upstream_error(504, f"upstream {upstream.name} timed out") from None
                raise upstream_error(502, f"upstream {upstream.name} failed: {exc}") from None
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _send_bytes(self, conn: Connection, body: bytes) -> None:
        conn.sending = True
        try:
            conn.write(body)
            await conn.drain()
        finally:
            conn.sending = False

    async def _send_body(self, request: Request, conn: Connection, limits: Limits) -> None:
        try:
            headers = request.headers
            scanner = body_scanner(headers.getall("Content-Type", []), headers.getall("Content-Encoding", []))
        except OverrideFound as exc:
            raise client_body_error(
                400, "invalid_request", f"unreadable form body: {exc}", Step.REQUEST
            ) from None
        guard = BodyGuard(request.content, limits.max_body_bytes, limits.body_timeout, scanner)
        chunked = request.content_length is None
        conn.sending = True
        try:
            async for chunk in guard:
                if conn.answered:
                    # It answered before the whole body: that answer goes back, the rest of
                    # the body does not go out, and the connection is not reused.
                    conn.reusable = False
                    return
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
            if chunked:
                conn.write(b"0\r\n\r\n")
        except (TimeoutError, ValueError):
            if guard.failure is not None:
                raise guard.failure from None
            raise
        finally:
            conn.sending = False

    async def _respond(
        self, request: Request, conn: Connection, request_id: str, delivery: Exchange | None = None
    ) -> Reply | StreamReply:
        reason = decode_header(conn.reason) or None
        headers = Block(*self.response_headers.block(conn.headers, request_id))
        mcp = delivery.mcp if delivery is not None and request.method != "HEAD" else None
        rewrite = response_filter(mcp, conn.headers) if mcp is not None else None
        if rewrite is not None and (rewrite.whole or conn.complete):  # an MCP tools/list, filtered
            return Reply(conn.status, headers, await filtered(conn, rewrite), reason)
        if conn.complete and request.method != "HEAD":
            # The whole response is here already: one write to the client.
            return Reply(conn.status, headers, conn.take_body(), reason)
        response = StreamReply(conn.status, headers, reason)
        length = next((v for n, v in conn.headers if n.lower() == b"content-length"), None)
        if length is not None and length.isdigit() and (rewrite is None or request.method == "HEAD"):
            response.content_length = int(length)
        sent = 0
        try:
            # The client may be gone before the head goes out, or at the end: the upstream
            # ran the request all the same, so that is a cut response, not an error of ours.
            await response.prepare(request)
            if delivery is not None:
                delivery.sent_status = response.status
            if request.method == "HEAD":
                await response.write_eof()
                return response
            while chunk := await conn.next_chunk():
                if rewrite is not None:
                    chunk = rewrite.feed(chunk)  # whole SSE events, filtered
                    if not chunk:
                        continue
                await response.write(chunk)
                sent += len(chunk)
            if rewrite is not None and (tail := rewrite.end()):
                await response.write(tail)
                sent += len(tail)
            if delivery is not None:
                delivery.bytes_sent = sent
            await response.write_eof()
        except UpstreamFailed as exc:
            # Headers are gone already: the only honest signal left is a cut connection.
            if request.transport is not None:
                request.transport.close()
            if delivery is not None:
                delivery.bytes_sent, delivery.upstream_aborted, delivery.abort_error = sent, True, str(exc)
            return response
        except ConnectionError as exc:  # the client went away: nobody to answer
            conn.reusable = False
            if delivery is not None:
                delivery.bytes_sent, delivery.client_aborted, delivery.abort_error = sent, True, str(exc)
            return response
        except asyncio.CancelledError:  # shutdown's drain time ran out mid-body
            if delivery is not None and delivery.sent_status:
                delivery.bytes_sent, delivery.shutdown_aborted = sent, True
            raise
        return response
