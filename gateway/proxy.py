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
from collections.abc import AsyncIterator, Iterable
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Histogram
from yarl import URL

from gateway.decision import Principal
from gateway.scopes import format_scopes
from gateway.settings import IPNetwork, Settings, Upstream

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
    }
)
ORIGINAL_PREFIX = "x-original-"
_SAFE_HEADER_VALUE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


class BodyGuard:
    """Streams the client's body upstream, enforcing the size limit and a per-read timeout."""

    def __init__(self, stream: aiohttp.StreamReader, max_bytes: int, timeout: float) -> None:
        self.stream = stream
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.received = 0
        self.failure: tuple[int, str, str] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await asyncio.wait_for(self.stream.readany(), self.timeout)
            except TimeoutError:
                self.failure = (408, "request_timeout", "client sent the request body too slowly")
                raise
            if not chunk:
                return
            self.received += len(chunk)
            if self.received > self.max_bytes:
                self.failure = (413, "payload_too_large", "request body too large")
                raise ValueError("request body too large")
            yield chunk


class UpstreamError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientBodyError(Exception):
    """The client's body broke a limit (413) or stalled (408) while being forwarded."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


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


def is_trusted(address: str | None, trusted: Iterable[IPNetwork]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def identity_headers(principal: Principal) -> dict[str, str]:
    """The caller's identity for the upstream; a header with nothing to say is left out."""
    token = principal.token
    headers = {
        "X-Tokenward-Token-Id": token.id,
        "X-Tokenward-Token-Name": header_value(token.name),
        "X-Tokenward-Org": token.org,
        "X-Tokenward-Team": token.team or "",
        "X-Tokenward-Service-Account": token.service_account or "",
        "X-Tokenward-Scopes": " ".join(format_scopes(principal.effective_scopes)),
    }
    return {name: value for name, value in headers.items() if value}


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
) -> CIMultiDict[str]:
    inbound = request.headers
    dropped = connection_tokens(inbound)
    trusted = is_trusted(request.remote, trusted_proxies)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in inbound.items():
        norm = normalize_name(name)
        lower = name.lower()
        if lower in HOP_BY_HOP or norm in HOP_BY_HOP or norm in dropped:
            continue
        if norm.startswith(IDENTITY_PREFIX) or lower in ("host", "x-request-id"):
            continue
        if lower == "authorization" and not forward_authorization:
            continue
        if norm in FORWARDING or norm.startswith(ORIGINAL_PREFIX):
            if not trusted:
                continue
            if norm in ("x-forwarded-host", "x-forwarded-proto"):
                continue  # replaced below from the trusted value
        out.add(name, value)
    client = request.remote or ""
    previous = inbound.get("X-Forwarded-For") if trusted else None
    out["X-Forwarded-For"] = f"{previous}, {client}" if previous else client
    proto = inbound.get("X-Forwarded-Proto") if trusted else None
    out["X-Forwarded-Proto"] = proto or request.scheme
    host = inbound.get("X-Forwarded-Host") if trusted else None
    out["X-Forwarded-Host"] = host or request.host
    out["X-Request-Id"] = request_id
    if principal is not None:
        out.update(identity_headers(principal))
    return out


class Forwarder:
    """One ClientSession for the app; streams both ways."""

    def __init__(self, session: aiohttp.ClientSession, latency: Histogram | None = None) -> None:
        self.session = session
        self.latency = latency

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
        limits = settings.limits
        url = URL(upstream.url + path + (f"?{query}" if query else ""), encoded=True)
        headers = upstream_headers(
            request, principal, request_id, settings.trusted_proxies, settings.forward_authorization
        )
        guard = (
            BodyGuard(request.content, limits.max_body_bytes, limits.body_timeout)
            if request.body_exists
            else None
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=upstream.connect_timeout, sock_read=upstream.timeout
        )
        sent = time.perf_counter()
        try:
            upstream_response = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=guard,
                timeout=timeout,
                allow_redirects=False,
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except Exception as exc:
            if guard is not None and guard.failure is not None:
                raise ClientBodyError(*guard.failure) from None
            if isinstance(exc, TimeoutError):
                raise UpstreamError(504, f"upstream {upstream.name} timed out") from None
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise UpstreamError(502, f"upstream {upstream.name} is unreachable") from None
            if isinstance(exc, aiohttp.ClientError):
                raise UpstreamError(502, f"upstream {upstream.name} failed: {type(exc).__name__}") from None
            raise
        if self.latency is not None:
            self.latency.labels(upstream.name).observe(time.perf_counter() - sent)
        async with upstream_response:
            response = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason)
            dropped = connection_tokens(upstream_response.headers)
            for name, value in upstream_response.headers.items():
                norm = normalize_name(name)
                if norm in _RESPONSE_DROP or norm in dropped:
                    continue
                response.headers.add(name, value)
            response.headers["X-Request-Id"] = request_id
            length = upstream_response.content_length
            if length is not None and request.method != "HEAD":
                response.content_length = length
            await response.prepare(request)
            try:
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
            except (TimeoutError, aiohttp.ClientError):
                # Headers are gone already: the only honest signal left is a cut connection.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
