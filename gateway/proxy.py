"""Forwarding: headers in and out, streamed bodies, upstream errors.

The upstream sees exactly the canonical path that was authorized. Hop-by-hop headers and
any header named in `Connection` are removed first; then every inbound header of the
identity family (`X-Tokenward-*`, whatever its case or `_`/`.` spelling) is removed and
tokenward's own are set, so nothing a client sends can remove or forge them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Histogram

from gateway.decision import Principal
from gateway.forms import BodyScanner, OverrideFound, body_scanner
from gateway.scopes import format_scopes
from gateway.settings import IPNetwork, Settings, Upstream
from gateway.upstream import IDEMPOTENT, Connection, Pool, UpstreamFailed, decode_header, request_head

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
IDENTITY_PREFIX = "x-tokenward-"
# Client-supplied forwarding and origin headers, trusted only from trusted_proxies.
FORWARDING = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "x-forwarded-uri",
        "x-forwarded-method",
        "x-forwarded-server",
        "x-rewrite-url",
    }
)
ORIGINAL_PREFIX = "x-original-"
_SAFE_HEADER_VALUE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# Set by tokenward itself, whatever the client sent: framing (Content-Length is re-derived
# from what aiohttp parsed, so no inbound spelling or Connection token can change how the
# upstream frames the body), Host, the request id and the trusted forwarding headers.
_REPLACED = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
)


class BodyGuard:
    """Streams the client's body upstream, enforcing the size limit and a per-read timeout;
    a form body's scanner sees each chunk before it is forwarded (see gateway/forms.py)."""

    def __init__(
        self, stream: aiohttp.StreamReader, max_bytes: int, timeout: float, scanner: BodyScanner | None = None
    ) -> None:
        self.stream = stream
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.scanner = scanner
        self.received = 0
        self.failure: tuple[int, str, str, str] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await asyncio.wait_for(self.stream.readany(), self.timeout)
            except TimeoutError:
                self.failure = (408, "request_timeout", "client sent the request body too slowly", "limits")
                raise
            if not chunk:
                return
            self.received += len(chunk)
            if self.received > self.max_bytes:
                self.failure = (413, "payload_too_large", "request body too large", "limits")
                raise ValueError("request body too large")
            if self.scanner is not None:
                try:
                    self.scanner.feed(chunk)
                except OverrideFound as exc:
                    self.failure = (400, "invalid_request", f"method override parameters are not accepted: {exc}", "request")
                    raise
            yield chunk


class UpstreamError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientBodyError(Exception):
    """The client's body broke a limit (413), stalled (408) or carried a method override
    (400) while being forwarded."""

    def __init__(self, status: int, error: str, message: str, step: str = "limits") -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.step = step


def normalize_name(name: str) -> str:
    """Header name as a proxy downstream might read it: case-folded, `_`/`.` as `-`."""
    return name.lower().replace("_", "-").replace(".", "-")


def header_value(text: str) -> str:
    """A value safe in a header line: printable ASCII, anything else percent-encoded."""
    return quote(text, safe=_SAFE_HEADER_VALUE)


def connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    names = set()
    for value in headers.getall("Connection", ()):
        for token in value.split(","):
            token = token.strip()
            if token:
                names.add(normalize_name(token))
    return names


_trust_memo: tuple[object, dict[str, bool]] = ((), {})


def is_trusted(address: str | None, trusted: tuple[IPNetwork, ...]) -> bool:
    """Is `address` inside `trusted`? Remembered per address for the current trusted set
    (the memo holds that set, so `is` can't be fooled by a recycled object)."""
    global _trust_memo
    if not address or not trusted:
        return False
    owner, memo = _trust_memo
    if owner is not trusted:
        memo = {}
        _trust_memo = (trusted, memo)
    found = memo.get(address)
    if found is None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            found = False
        else:
            found = any(ip in net for net in trusted)
        if len(memo) < 10_000:
            memo[address] = found
    return found


_identity_memo: dict[int, tuple[object, object, dict[str, str]]] = {}


def identity_headers(principal: Principal) -> dict[str, str]:
    """The caller's identity for the upstream; a header with nothing to say is left out.
    Remembered per (token record, team permissions) object pair: both are immutable and
    replaced, not changed, when the store says so."""
    token, permissions = principal.token, principal.team_permissions
    memo = _identity_memo.get(id(token))
    if memo is not None and memo[0] is token and memo[1] is permissions:
        return memo[2]
    headers = {
        "X-Tokenward-Token-Id": token.id,
        "X-Tokenward-Token-Name": header_value(token.name),
        "X-Tokenward-Org": token.org,
        "X-Tokenward-Team": token.team or "",
        "X-Tokenward-Service-Account": token.service_account or "",
        "X-Tokenward-Scopes": " ".join(format_scopes(principal.effective_scopes)),
    }
    headers = {name: value for name, value in headers.items() if value}
    if len(_identity_memo) > 10_000:
        _identity_memo.clear()
    _identity_memo[id(token)] = (token, permissions, headers)
    return headers


def client_address(request: web.BaseRequest, trusted: tuple[IPNetwork, ...]) -> str | None:
    """The client's address: the peer, or behind trusted proxies the right-most
    X-Forwarded-For entry that is not itself a trusted proxy."""
    peer = request.remote
    if not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage in the chain: trust only what we saw ourselves
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def upstream_headers(
    request: web.BaseRequest,
    principal: Principal | None,
    request_id: str,
    trusted_proxies: tuple[IPNetwork, ...],
    forward_authorization: bool,
) -> list[tuple[str, str]]:
    inbound = request.headers
    dropped = connection_tokens(inbound) if "Connection" in inbound else ()
    trusted = is_trusted(request.remote, trusted_proxies)
    out: list[tuple[str, str]] = []
    for name, value in inbound.items():
        lower = name.lower()
        norm = lower.replace("_", "-").replace(".", "-") if ("_" in lower or "." in lower) else lower
        if lower in HOP_BY_HOP or norm in HOP_BY_HOP or norm in dropped:
            continue
        if norm.startswith(IDENTITY_PREFIX) or lower in _REPLACED or norm in _REPLACED:
            continue
        if lower == "authorization" and not forward_authorization:
            continue
        if norm in FORWARDING or norm.startswith(ORIGINAL_PREFIX):
            if not trusted or norm in _REPLACED:
                continue  # untrusted, or replaced below from the trusted value
        out.append((name, value))
    client = request.remote or ""
    previous = ", ".join(inbound.getall("X-Forwarded-For")) if trusted and "X-Forwarded-For" in inbound else None
    out.append(("X-Forwarded-For", f"{previous}, {client}" if previous else client))
    proto = inbound.get("X-Forwarded-Proto") if trusted else None
    out.append(("X-Forwarded-Proto", proto or request.scheme))
    host = inbound.get("X-Forwarded-Host") if trusted else None
    out.append(("X-Forwarded-Host", host or request.host))
    out.append(("X-Request-Id", request_id))
    if principal is not None:
        out.extend(identity_headers(principal).items())
    return out


def response_headers(raw: list[tuple[bytes, bytes]], request_id: str) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop ones (and Content-Length, which
    aiohttp sets from what is actually sent)."""
    dropped: set[str] = set()
    for raw_name, value in raw:
        if raw_name.lower() == b"connection":
            for token in decode_header(value).split(","):
                if token.strip():
                    dropped.add(normalize_name(token.strip()))
    out: CIMultiDict[str] = CIMultiDict()
    for raw_name, value in raw:
        name = decode_header(raw_name)
        norm = normalize_name(name)
        if norm in _RESPONSE_DROP or norm in dropped or norm == "x-request-id":
            continue
        out.add(name, decode_header(value))
    out["X-Request-Id"] = request_id
    return out


class Forwarder:
    """Pools of keep-alive connections per upstream; small responses are answered in one
    write, larger or slower ones streamed."""

    def __init__(self, latency: Histogram | None = None) -> None:
        self.latency = latency
        self.pools: dict[tuple[str, str], Pool] = {}

    def pool(self, upstream: Upstream) -> Pool:
        key = (upstream.name, upstream.url)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(upstream, asyncio.get_running_loop())
        return pool

    @staticmethod
    def _headers(
        request: web.BaseRequest, pool: Pool, principal: Principal | None, request_id: str, settings: Settings
    ) -> list[tuple[str, str]]:
        headers = upstream_headers(
            request, principal, request_id, settings.trusted_proxies, settings.forward_authorization
        )
        headers.insert(0, ("Host", pool.host_header))
        return headers

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    async def forward(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        path: str,
        query: str,
        principal: Principal | None,
        request_id: str,
        settings: Settings,
    ) -> web.StreamResponse:
        pool = self.pool(upstream)
        headers = self._headers(request, pool, principal, request_id, settings)
        method = request.method
        has_body = request.body_exists
        # Framing from what aiohttp parsed, never from inbound header spellings.
        if request.content_length is not None:
            headers.append(("Content-Length", str(request.content_length)))
        elif has_body:
            headers.append(("Transfer-Encoding", "chunked"))
        if has_body and request.headers.get("Expect", "").lower() == "100-continue" and request.transport:
            # The decision is made: let the client send its body (the upstream gets it at once).
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        head = request_head(method, pool.target(path, query), headers)
        sent = time.perf_counter()
        replayable = method in IDEMPOTENT and not has_body
        conn = await self._exchange(request, pool, upstream, head, has_body, replayable, settings)
        if self.latency is not None:
            self.latency.labels(upstream.name).observe(time.perf_counter() - sent)
        try:
            if conn.upgraded or conn.status == 101:
                conn.reusable = False
                raise UpstreamError(502, f"upstream {upstream.name} switched protocols unasked")
            return await self._respond(request, conn, request_id)
        finally:
            conn.finish()

    async def upgrade(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        path: str,
        query: str,
        principal: Principal | None,
        request_id: str,
        settings: Settings,
    ) -> tuple[Connection | None, web.StreamResponse]:
        """Ask the upstream to switch protocols. With its 101: the connection (to tunnel)
        and the 101 for the client, not yet sent. Otherwise its answer, as usual."""
        pool = self.pool(upstream)
        headers = self._headers(request, pool, principal, request_id, settings)
        headers += [("Connection", "Upgrade"), ("Upgrade", request.headers["Upgrade"])]
        head = request_head("GET", pool.target(path, query), headers)
        conn = await self._exchange(request, pool, upstream, head, False, True, settings)
        if conn.status != 101 or not conn.upgraded:
            conn.reusable = False  # an upgrade attempt's connection never goes back to the pool
            try:
                if conn.status == 101:
                    raise UpstreamError(502, f"upstream {upstream.name} switched protocols without Upgrade")
                return None, await self._respond(request, conn, request_id)
            finally:
                conn.finish()
        out = response_headers(conn.headers, request_id)
        upgrade = next((v for n, v in conn.headers if n.lower() == b"upgrade"), b"websocket")
        out["Connection"] = "Upgrade"
        out["Upgrade"] = decode_header(upgrade)
        return conn, web.StreamResponse(status=101, reason=decode_header(conn.reason) or None, headers=out)

    async def _exchange(
        self,
        request: web.BaseRequest,
        pool: Pool,
        upstream: Upstream,
        head: bytes,
        has_body: bool,
        replayable: bool,
        settings: Settings,
    ) -> Connection:
        """Send the request; return the connection once the response head is in."""
        for attempt in (0, 1):
            try:
                conn, reused = await pool.acquire(upstream.connect_timeout, replayable)
            except UpstreamFailed as exc:
                raise UpstreamError(504 if exc.timeout else 502, str(exc)) from None
            conn.begin(request.method == "HEAD", upstream.timeout)
            try:
                conn.write(head)
                if has_body:
                    await self._send_body(request, conn, settings)
                await conn.response_head()
                return conn
            except UpstreamFailed as exc:
                conn.close()
                if exc.stale and reused and replayable and attempt == 0:
                    continue  # the upstream closed the idle connection: once more, on a new one
                if exc.timeout:
                    raise UpstreamError(504, f"upstream {upstream.name} timed out") from None
                raise UpstreamError(502, f"upstream {upstream.name} failed: {exc}") from None
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _send_body(self, request: web.BaseRequest, conn: Connection, settings: Settings) -> None:
        limits = settings.limits
        try:
            headers = request.headers
            scanner = body_scanner(headers.getall("Content-Type", []), headers.getall("Content-Encoding", []))
        except OverrideFound as exc:
            raise ClientBodyError(400, "invalid_request", f"unreadable form body: {exc}", "request") from None
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
                raise ClientBodyError(*guard.failure) from None
            raise
        finally:
            conn.sending = False

    async def _respond(self, request: web.BaseRequest, conn: Connection, request_id: str) -> web.StreamResponse:
        reason = decode_header(conn.reason) or None
        headers = response_headers(conn.headers, request_id)
        if conn.complete and request.method != "HEAD":
            # The whole response is here already: one write to the client.
            return web.Response(status=conn.status, reason=reason, headers=headers, body=conn.take_body())
        response = web.StreamResponse(status=conn.status, reason=reason, headers=headers)
        if request.method == "HEAD":
            length = next((v for n, v in conn.headers if n.lower() == b"content-length"), None)
            if length is not None:
                response.headers["Content-Length"] = decode_header(length)
        else:
            length = next((v for n, v in conn.headers if n.lower() == b"content-length"), None)
            if length is not None and length.isdigit():
                response.content_length = int(length)
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        try:
            while chunk := await conn.next_chunk():
                await response.write(chunk)
        except UpstreamFailed:
            # Headers are gone already: the only honest signal left is a cut connection.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
